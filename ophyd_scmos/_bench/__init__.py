"""The throughput harness behind `ophyd-scmos bench`: every number against the machine's own.

Absolute rates vary from machine to machine and minute to minute here (page cache, a disk
whose speed flips, other processes), so every variant runs in the same process on the same
disk, in rotated order, after a `sync`, and is quoted as a ratio to a plain file write of the
same bytes measured in the same run. Each burst is timed twice: to the closed file (the page
cache may still hold it) and to the final `fsync` (on disk). Long runs, several times what
the page cache absorbs, make the disk the limit.

Private, and at the top of the package beside the CLI: it drives the pipeline, the Device
and the RunEngine, and nothing but `ophyd_scmos.cli.bench` (and its tests) imports it.
`cameras` holds the formats and cameras under test, `harness` the runs to disk, `probes`
what is measured beside the disk (compression in memory, memory, RE(count)), `floor` the
least a step-scan device keeping our guarantee does (the pace section's floor), `report` the
printed tables and the JSON.
"""
