"""``python -m spine_app.cli``: the same as the ``spine-app`` console script."""

from spine_app.cli import main

if __name__ == "__main__":
    main()
