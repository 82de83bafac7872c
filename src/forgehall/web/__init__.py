"""Server-rendered pages (Jinja2). Every form works without JavaScript."""
