"""HTTP pieces shared by every service: the per-service aiohttp application and its JSON error handling."""
