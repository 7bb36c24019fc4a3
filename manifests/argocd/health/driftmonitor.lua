-- Argo CD health of modelops.dev/DriftMonitor
-- (argocd-cm key resource.customizations.health.modelops.dev_DriftMonitor).
--   condition Drifted=True                                       -> Degraded
--   condition Underperforming=True (live quality rule fired)     -> Degraded
--   condition FairnessViolated=True (live fairness rule fired)   -> Degraded
--   a monitor that cannot work (invalid spec, reference profile
--   missing or failing its sha256)                               -> Degraded
--   no drift (phase Healthy)                                     -> Healthy
--   InsufficientData: fewer samples in the window than minSamples -> Healthy, with the count
--   not checked yet, target not serving yet, new generation      -> Progressing
-- InsufficientData is Healthy: the monitor works and simply has no evidence of drift (a quiet
-- model at night); Progressing would hold the Application, and every sync wave after it, in
-- Progressing for as long as traffic stays low, which Argo CD cannot tell from a stuck rollout.
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

local BROKEN = {InvalidSpec = true, DigestMismatch = true, ArtifactMissing = true, ProfileMissing = true,
                CheckFailed = true}

local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the first check"
  return hs
end

local drifted = condition(status, "Drifted")
if drifted ~= nil and BROKEN[drifted.reason] then
  hs.status = "Degraded"
  hs.message = text(drifted.reason) .. ": " .. text(drifted.message)
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. text(obj.metadata.generation)
  return hs
end

local under = condition(status, "Underperforming")
local unfair = condition(status, "FairnessViolated")
if (under ~= nil and under.status == "True") or status.phase == "Underperforming" then
  hs.status = "Degraded"
  hs.message = "Underperforming: " .. text(status.message)
elseif (unfair ~= nil and unfair.status == "True") or status.phase == "FairnessViolated" then
  hs.status = "Degraded"
  hs.message = "FairnessViolated: " .. text(unfair ~= nil and unfair.message or status.message)
elseif (drifted ~= nil and drifted.status == "True") or status.phase == "Drifted" then
  hs.status = "Degraded"
  hs.message = "Drift: " .. text(status.message)
elseif status.phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = text(status.message)
elseif status.phase == "InsufficientData" then
  hs.status = "Healthy"
  hs.message = "Insufficient data: " .. text(status.message)
elseif status.phase == "Pending" then
  hs.status = "Progressing"
  hs.message = text(status.message)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. text(status.phase)
end
return hs
