"""OAuth2 for the mesh: the key ring, the authorization server's pieces, and what resource servers use.

Resource servers need only `guard.BearerGuard` (verify bearer tokens) and `token_source` (get machine tokens);
the authorization server itself is the `meshrun.services.auth` service, built from `meshrun.auth.issuer`.
"""
