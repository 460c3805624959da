from fastproxy.cli import main

main()
