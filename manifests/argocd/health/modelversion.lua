-- Argo CD health of modelops.dev/ModelVersion
-- (argocd-cm key resource.customizations.health.modelops.dev_ModelVersion).
-- Ready (artifact found, sha256 verified) -> Healthy; Failed (missing artifact, digest
-- mismatch, invalid spec) -> Degraded; not verified yet -> Progressing. The spec is immutable,
-- so there is no generation to wait for.
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
if status == nil or status.phase == nil or status.phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to verify the artifact"
  return hs
end

local ready = condition(status, "Ready")
if status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = text(status.message)
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  if ready ~= nil then
    hs.message = text(ready.reason) .. ": " .. text(ready.message)
  else
    hs.message = text(status.message)
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. text(status.phase)
end
return hs
