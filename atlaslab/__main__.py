from atlaslab.cli import main

main()
