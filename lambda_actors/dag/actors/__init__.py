"""The actors of DAG runs (SPEC section 8): run execution, and the Matrix side (matrix_side.py)."""
