-- Argo CD health of modelops.dev/TrainingRun
-- (argocd-cm key resource.customizations.health.modelops.dev_TrainingRun).
-- A run ends: Succeeded -> Healthy, Failed -> Degraded; until then Progressing.
-- The phase decides even when the spec changed after the end: a finished run is never rerun.
local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the training Job"
  return hs
end

local ready = condition(status, "Ready")
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  local registered = condition(status, "Registered")
  if status.modelVersion ~= nil then
    hs.message = "Trained (" .. text(status.metricsSummary) .. "), registered as " .. status.modelVersion
  elseif registered ~= nil then
    hs.message = "Trained (" .. text(status.metricsSummary) .. "), not registered: " .. text(registered.message)
  else
    hs.message = "Trained (" .. text(status.metricsSummary) .. ")"
  end
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  if ready ~= nil then
    hs.message = text(ready.reason) .. ": " .. text(ready.message)
  else
    hs.message = text(status.message)
  end
else
  hs.status = "Progressing"
  if ready ~= nil and ready.message ~= nil then
    hs.message = ready.message
  else
    hs.message = "Training is " .. string.lower(status.phase)
  end
end
return hs
