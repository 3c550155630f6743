"""`meshrun bench`: drives orders through a running order pipeline and measures it end to end.

It is a client of the mesh (HTTP in, the User service's own records out), never a part of it: a distribution of its
own (bench/pyproject.toml) that adds `bench` to the `meshrun` command through the `meshrun.commands` entry points.
"""
