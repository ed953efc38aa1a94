-- Argo CD health check for llmops.dev/PretrainJob, from the conditions the llmops
-- operator writes (kstatus vocabulary): Ready is always there; Reconciling and
-- Stalled only while True. Each condition carries the generation it was written for.
local hs = {}

local function generation_of(c)
  if c.observedGeneration ~= nil then
    return c.observedGeneration
  end
  return obj.status.observedGeneration
end

-- The condition of this type written for the current generation, or nil.
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      if generation_of(c) ~= nil and generation_of(c) ~= obj.metadata.generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function message(c, default)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return default
end

if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(stalled, "Stalled")
  return hs
end

-- spec.suspend: the run stops (its pods save a checkpoint) until it is unset;
-- once they have stopped, the operator writes no condition (phase Suspended).
-- A run that finished before it was suspended stays Healthy.
if obj.spec ~= nil and obj.spec.suspend == true
    and not (ready ~= nil and ready.status == "True") then
  local text = "Suspended; set spec.suspend to false to resume from the newest checkpoint"
  if obj.status.progress ~= nil and obj.status.progress.step ~= nil then
    text = "Suspended at step " .. tostring(obj.status.progress.step)
      .. "; set spec.suspend to false to resume from the newest checkpoint"
  end
  hs.status = "Suspended"
  hs.message = message(condition("Reconciling"), text)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = message(reconciling, "Reconciling")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = message(ready, "Waiting for the Ready condition")
return hs
