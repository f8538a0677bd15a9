"""`voxmesh demo`: a scripted conversation with real speech over the running stack."""
