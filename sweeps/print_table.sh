#!/usr/bin/env bash
# print_table.sh NAME TABLE [FLAG...]: Table TABLE from the sweep in $OUT_ROOT/NAME, with
# COLLECT_FLAGS and FLAG...; what each table target of the Makefile runs after its sweep.
# A sweep whose jobs have written no record yet (a launcher that returns before its jobs end,
# or jobs another launcher is running) is a note and exit status 0: run it again later. Any
# other failure of paper_tables is this script's failure. LAUNCHER=dummy ran no job, so
# there is nothing to print.
source "$(dirname "$0")/_common.sh"
name=$1 table=$2
shift 2
if [ "$LAUNCHER" = dummy ]; then
    echo "LAUNCHER=dummy: nothing ran so there is no Table $table"
    exit 0
fi
status=0
# shellcheck disable=SC2086  # COLLECT_FLAGS is a list of flags
"$PY" -m domainbed_itl.scripts.paper_tables --input_dir "$OUT_ROOT/$name" --table "$table" \
    $COLLECT_FLAGS "$@" || status=$?
if [ "$status" = 3 ]; then  # paper_tables: no record in the sweep directory yet
    echo "No Table $table yet: run make again once the jobs in $OUT_ROOT/$name have finished"
    exit 0
fi
exit "$status"
