from kd_utils.cli import main

raise SystemExit(main())
