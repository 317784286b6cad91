# Sourced by the demos (scripts/demo.sh, scripts/sweep_demo.sh) with the demo's arguments, after the venv is active.
# The task data is found as the library finds it: --data-dir > $ZO_DATA_DIR > ../shared/data.  When none of them is
# there, the demo runs on the small in-repo sample zoplatform/data/fixtures (real rows, see its SOURCES.md) and says so
# (issue 33 item 3): the numbers are then smoke-test numbers, not benchmark results.
_zo_has_data_dir=0
for _zo_arg in "$@"; do
  case "$_zo_arg" in --data-dir|--data-dir=*) _zo_has_data_dir=1 ;; esac
done
if [ "$_zo_has_data_dir" = 0 ] && [ -z "${ZO_DATA_DIR:-}" ] \
   && ! python -c "from zoplatform.data import resolve_data_dir; resolve_data_dir()" 2>/dev/null; then
  ZO_DATA_DIR=$(python -c "from zoplatform.data import FIXTURE_DIR; print(FIXTURE_DIR)")
  export ZO_DATA_DIR
  echo "note: no task data found (pass --data-dir DIR, set ZO_DATA_DIR, or put the data in ../shared/data);" \
       "running on the small in-repo sample $ZO_DATA_DIR (SST-2: 1,200 train and 500 dev rows, see its" \
       "SOURCES.md): smoke-test numbers, not benchmark results" >&2
fi
unset _zo_has_data_dir _zo_arg
