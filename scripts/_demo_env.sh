# Sourced by scripts/up and scripts/demo: the demo's client secret, which services.toml takes from the environment
# (it holds no secret itself). Published in docs/auth.md, so for a laptop only; a value already exported wins.
export MESHRUN_NOTIFICATION_SECRET="${MESHRUN_NOTIFICATION_SECRET:-notification-secret}"
