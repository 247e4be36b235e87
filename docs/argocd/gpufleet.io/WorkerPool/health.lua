-- Argo CD health of a gpufleet WorkerPool, read from the kstatus conditions the operator
-- writes, so Argo CD and Flux (kstatus) judge a pool the same way:
--   not yet observed (no status, or observedGeneration < generation)  -> Progressing
--   Stalled=True (it cannot progress without a change, e.g. no GPU fits) -> Degraded
--   Ready=True                                                          -> Healthy
--   anything else (Reconciling=True: scaling, workers starting)         -> Progressing
local hs = {}

local function find(conditions, wanted)
  for _, c in ipairs(conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the pool"
  return hs
end
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = find(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled, "Stalled")
  return hs
end
local ready = find(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = explain(find(status.conditions, "Reconciling"), explain(ready, "Waiting for the pool to become ready"))
return hs
