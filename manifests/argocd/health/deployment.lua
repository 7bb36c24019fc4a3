-- Argo CD health of modelops.dev/Deployment (the model server, not apps/v1)
-- (argocd-cm key resource.customizations.health.modelops.dev_Deployment).
--   spec not yet seen by the operator (status.observedGeneration ~= metadata.generation),
--   no Ready version yet, a canary walking its steps, serving pods not all ready -> Progressing
--   Stable, Promoted, all serving pods ready                                      -> Healthy
--   RolledBack, Degraded (e.g. an invalid spec)                                     -> Degraded
-- RolledBack is Degraded although the stable version goes on serving: the version Git asked
-- for was rejected, so the live state is not the desired one until someone acts (a new
-- version or a spec change) - Argo Rollouts marks an aborted rollout Degraded for the same
-- reason, and the operator's own Degraded condition says True.
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
  hs.message = "Waiting for the operator"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. text(obj.metadata.generation)
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
if phase == "Stable" or phase == "Promoted" then
  if ready ~= nil and ready.status == "False" then
    hs.status = "Progressing"
    hs.message = text(status.stableVersion) .. ": " .. text(ready.message)
  else
    hs.status = "Healthy"
    hs.message = "Serving " .. text(status.stableVersion)
  end
elseif phase == "Progressing" then
  hs.status = "Progressing"
  if status.canaryVersion ~= nil then
    hs.message = "Canary " .. status.canaryVersion .. " at " .. text(status.canaryWeight) .. "%"
    if status.message ~= nil then
      hs.message = hs.message .. ": " .. status.message
    end
  else
    hs.message = text(status.message)
  end
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = text(status.message)
  if hs.message == "" and ready ~= nil then
    hs.message = text(ready.message)
  end
elseif phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "Canary " .. text(status.canaryVersion) .. " rolled back, " .. text(status.stableVersion) .. " still serving: " .. text(status.message)
elseif phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = text(status.message)
  if hs.message == "" and ready ~= nil then
    hs.message = text(ready.message)
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. text(phase)
end
return hs
