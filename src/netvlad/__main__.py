from netvlad.cli import main

raise SystemExit(main())
