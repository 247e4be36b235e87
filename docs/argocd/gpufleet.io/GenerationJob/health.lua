-- Argo CD health of a gpufleet GenerationJob, read from the kstatus conditions the operator
-- writes, so Argo CD and Flux (kstatus) judge a job the same way:
--   not yet observed (no status, or observedGeneration < generation) -> Progressing
--   Stalled=True (phase Failed, or Pending for a reason only the user
--   can fix: Unschedulable, PoolNotFound, ModelNotServed, ...)       -> Degraded
--   Ready=True (phase Succeeded, or Cancelled as asked)              -> Healthy
--   anything else (Pending, Queued, Dispatched, Running)             -> Progressing
-- Without conditions the phase decides the same way.
local hs = {}

local function find(conditions, wanted)
  for _, c in ipairs(conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function explain(phase, c, fallback)
  local text = fallback
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    text = c.message
  elseif c ~= nil and c.reason ~= nil and c.reason ~= "" then
    text = c.reason
  end
  if phase ~= nil and text ~= "" then
    return phase .. ": " .. text
  end
  if phase ~= nil then
    return phase
  end
  return text
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the job"
  return hs
end
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local detail = status.message or status.reason or ""
local stalled = find(status.conditions, "Stalled")
local ready = find(status.conditions, "Ready")
if stalled == nil and ready == nil then
  if phase == "Failed" then
    hs.status = "Degraded"
  elseif phase == "Succeeded" or phase == "Cancelled" then
    hs.status = "Healthy"
  else
    hs.status = "Progressing"
  end
  hs.message = explain(phase, nil, detail)
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(phase, stalled, detail)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(phase, ready, detail)
  return hs
end
hs.status = "Progressing"
hs.message = explain(phase, find(status.conditions, "Reconciling") or ready, detail)
return hs
