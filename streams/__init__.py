"""The devicestream Faust application, its settings and its topics."""
