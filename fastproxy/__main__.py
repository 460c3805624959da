from fastproxy.server.cli import main

main()
