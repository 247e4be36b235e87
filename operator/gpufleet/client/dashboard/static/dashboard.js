// The gpufleet dashboard: lays out the view the server pushes over server-sent events.
// Every text goes in through textContent (never as HTML), so names and messages from the
// cluster cannot inject markup; artifacts are shown in <img>, where an SVG's scripts never run.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function bytes(n) {
  for (const [unit, size] of [["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]]) {
    if (n >= size) return (n / size).toFixed(1) + unit;
  }
  return n + "B";
}

function table(node, headers, rows, empty) {
  node.replaceChildren(el("tr", {}, ...headers.map((h) => el("th", {}, h))));
  if (rows.length === 0) {
    node.append(el("tr", {}, el("td", { className: "empty", colspan: String(headers.length) }, empty)));
    return;
  }
  node.append(...rows);
}

function vramBar(gpu) {
  const bar = el("div", { className: "bar", dataset: { gpu: gpu.id } });
  for (const seg of gpu.segments) {
    const part = el("span", {
      className: "seg " + seg.kind,
      title: `${seg.name}: ${bytes(seg.bytes)}`,
      dataset: { kind: seg.kind, name: seg.name, bytes: String(seg.bytes) },
    });
    part.style.width = seg.percent + "%";
    bar.append(part);
  }
  return bar;
}

function renderPools(pools) {
  const node = document.getElementById("pools");
  if (pools.length === 0) {
    node.replaceChildren(el("p", { className: "muted" }, "no WorkerPools here"));
    return;
  }
  node.replaceChildren(
    ...pools.map((pool) => {
      const card = el("div", { className: "pool", dataset: { pool: `${pool.namespace}/${pool.name}` } });
      card.append(
        el(
          "div",
          { className: "pool-head" },
          el("span", { className: "pool-name" }, `${pool.namespace}/${pool.name}`),
          el("span", { className: "health " + pool.health }, pool.health),
          el("span", { className: "workers-ready" }, `workers ${pool.ready}/${pool.desired} ready`),
          el("span", { className: "pool-queue" }, `queue ${pool.queue}`),
          el("span", { className: "pool-running" }, `running ${pool.running}`),
          el("span", { className: "muted" }, pool.summary),
        ),
        el(
          "div",
          { className: "conditions" },
          ...pool.conditions.map((c) =>
            el(
              "span",
              { className: `cond ${c.type} ${c.status}`, title: c.message, dataset: { type: c.type, status: c.status } },
              `${c.type}=${c.status} ${c.reason} (${c.since})`,
            ),
          ),
        ),
      );
      for (const worker of pool.workers) {
        const box = el("div", { className: "worker", dataset: { worker: worker.pod } });
        box.append(
          el(
            "div",
            {},
            el("b", {}, worker.pod),
            ` ${worker.ready ? "ready" : "not ready"} · node ${worker.node || "?"} · jobs ${worker.jobs.join(", ") || "none"}`,
          ),
        );
        for (const gpu of worker.gpus) {
          box.append(
            el(
              "div",
              { className: "gpu" },
              el("span", { title: gpu.id }, gpu.product),
              vramBar(gpu),
              el("span", { className: "vram-label" }, gpu.label),
            ),
          );
        }
        card.append(box);
      }
      return card;
    }),
  );
}

function renderModels(models) {
  table(
    document.getElementById("models"),
    ["model", "pool", "VRAM", "resident on"],
    models.map((m) =>
      el(
        "tr",
        { dataset: { model: m.name } },
        el("td", {}, m.name),
        el("td", {}, `${m.namespace}/${m.pool}`),
        el("td", {}, bytes(m.vramBytes)),
        el("td", {}, m.where.join(", ") || "nowhere"),
      ),
    ),
    "no models served",
  );
}

function renderQueue(queue) {
  table(
    document.getElementById("queue"),
    ["#", "job", "pool", "phase", "priority", "waiting", "reason", "why"],
    queue.map((q) =>
      el(
        "tr",
        { className: q.blocked ? "blocked" : "", dataset: { job: `${q.namespace}/${q.name}` } },
        el("td", {}, q.position === null ? "" : String(q.position)),
        el("td", {}, `${q.namespace}/${q.name}`),
        el("td", {}, q.pool),
        el("td", {}, q.phase),
        el("td", {}, String(q.priority)),
        el("td", {}, q.waiting),
        el("td", { className: "reason" }, q.reason),
        el("td", { className: "message" }, q.message),
      ),
    ),
    "nothing waiting",
  );
}

function preview(artifact) {
  if (artifact.kind === "image") {
    return el(
      "a",
      { href: artifact.href, target: "_blank", rel: "noopener noreferrer" },
      el("img", { className: "thumb", src: artifact.href, alt: artifact.name, title: artifact.name, loading: "lazy" }),
    );
  }
  return el("a", { href: artifact.href, target: "_blank", rel: "noopener noreferrer" }, artifact.name);
}

function renderJobs(jobs) {
  table(
    document.getElementById("jobs"),
    ["job", "pool", "task / model", "phase", "progress", "waited", "ran", "age", "worker", "reason", "artifacts"],
    jobs.map((j) => {
      const fill = el("div");
      fill.style.width = j.percent + "%";
      const steps = j.totalSteps ? ` ${j.step}/${j.totalSteps}` : "";
      return el(
        "tr",
        { className: "phase-" + j.phase, dataset: { job: `${j.namespace}/${j.name}`, phase: j.phase, percent: String(j.percent) } },
        el("td", {}, `${j.namespace}/${j.name}`),
        el("td", {}, j.pool),
        el("td", {}, `${j.task} / ${j.model}`),
        el("td", {}, j.phase + (j.stalled && !j.finished ? " (Stalled)" : "")),
        el("td", {}, el("span", { className: "progress" }, fill), ` ${j.percent}%${steps}`),
        el("td", {}, j.waited),
        el("td", {}, j.ran),
        el("td", {}, j.age),
        el("td", { title: j.gpu }, j.worker),
        el("td", { title: j.message }, j.reason),
        el(
          "td",
          {},
          ...j.artifacts.map(preview),
          j.result ? el("div", { className: "result" }, j.result) : null,
        ),
      );
    }),
    "no jobs",
  );
}

function bars(values, height, classFor) {
  const width = 4 * values.length;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const top = Math.max(1, ...values.map((v) => v.reduce((a, b) => a + b, 0)));
  values.forEach((stack, i) => {
    let y = height;
    stack.forEach((value, k) => {
      const h = (value / top) * (height - 2);
      if (h > 0) {
        y -= h;
        chart.append(svg("rect", { x: i * 4, y, width: 3, height: h, class: classFor[k] }));
      }
    });
  });
  return chart;
}

function renderHistory(h) {
  const finished = h.succeeded.map((ok, i) => [ok, h.unsuccessful[i]]);
  const waits = h.meanWaitSeconds.map((w) => [w || 0]);
  document.getElementById("history").replaceChildren(
    el(
      "div",
      { className: "history" },
      el(
        "div",
        {},
        el("div", {}, `jobs finished per minute (avg ${h.jobsPerMinute}/min, ${h.finished} in ${h.minutes} min)`),
        bars(finished, 60, ["ok", "bad"]),
      ),
      el(
        "div",
        {},
        el("div", {}, `wait before start: p50 ${h.waitP50 || "–"}, p95 ${h.waitP95 || "–"} (${h.started} started)`),
        bars(waits, 60, ["wait"]),
      ),
    ),
  );
}

function render(view) {
  document.getElementById("scope").textContent = view.scope;
  document.getElementById("updated").textContent = `as of ${view.now}`;
  setConnection(view.connected ? "live" : "disconnected", view.connected ? "live" : "API server disconnected — reconnecting");
  document.getElementById("problems").replaceChildren(
    ...view.problems.map((p) => el("div", { dataset: { resource: p.resource } }, p.message)),
  );
  renderPools(view.pools);
  renderModels(view.models);
  renderQueue(view.queue);
  renderJobs(view.jobs);
  renderHistory(view.history);
}

function setConnection(state, text) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function connect() {
  const source = new EventSource("/events");
  source.onmessage = (event) => render(JSON.parse(event.data));
  // The browser reconnects by itself (the server asks for a retry after 1 s).
  source.onerror = () => setConnection("disconnected", "dashboard server unreachable — reconnecting");
}

connect();
