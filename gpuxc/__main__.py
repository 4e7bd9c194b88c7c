from gpuxc.cli import main

raise SystemExit(main())
