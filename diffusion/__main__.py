"""``python -m diffusion ...``: runs :func:`diffusion.cli.main` (the command line's home)."""
from diffusion.cli import build_parser, main  # noqa: F401  (old imports keep working)

if __name__ == "__main__":
    raise SystemExit(main())
