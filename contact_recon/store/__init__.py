"""Everything a run keeps: the DuckDB store and the run files. All SQL of the product lives here.

`db.py` is the store (runs, snapshots, base, id_map, identity review, check results; `open_db` migrates it),
`journal.py` the apply stage's write-ahead journal and created-objects memory, `decisions.py` the data
team's decisions (the filled-in CSV and its table), `files.py` a run's files and the one atomic write.
"""
