"""`python -m critic_unlearn.toyworld build|info`: the commands of `critic-unlearn toyworld`."""

from critic_unlearn.toyworld.cli import app

if __name__ == "__main__":
    app()
