"""The WSGI entry point gunicorn loads: wsgi:app."""

from chatsvc import create_app

app = create_app()
