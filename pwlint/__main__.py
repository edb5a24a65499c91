from pwlint.cli import main

raise SystemExit(main())
