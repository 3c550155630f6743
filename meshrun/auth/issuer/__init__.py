"""The authorization server's pieces: clients, users, codes, refresh-token families, grants, introspection.

No aiohttp here beyond building responses: `meshrun.services.auth` maps HTTP requests onto `AuthorizationServer`.
"""
