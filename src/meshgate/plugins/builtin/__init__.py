"""Built-in plugins: one module per plugin (``key_auth.py`` declares ``NAME = "key-auth"``)."""
