from mlcloud.cli import main

main()
