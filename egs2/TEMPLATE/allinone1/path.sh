# Environment for the allinone recipes (sourced by cmd.sh users and run.sh).
# Uses the repository's .venv when there is one; otherwise whatever python3
# on PATH has espnet-allinone installed (pip install -e .).
ALLINONE_ROOT="${ALLINONE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}"
if [ -f "${ALLINONE_ROOT}/.venv/bin/activate" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    . "${ALLINONE_ROOT}/.venv/bin/activate"
fi
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Debian's sctk puts sclite outside PATH.
[ -d /usr/lib/sctk/bin ] && export PATH="${PATH}:/usr/lib/sctk/bin"
