from ci_mcp.cli import main

raise SystemExit(main())
