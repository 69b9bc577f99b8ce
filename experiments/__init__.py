"""Scripts that produce Baton's benchmark figures and tables (nothing imports them)."""
