from voxmesh.cli import main

main()
