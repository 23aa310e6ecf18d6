from imagedb.cli import main

main()
