# How jobs are run (as in ESPnet's cmd.sh). utils/run_local.sh runs them on this
# machine; for a cluster, set these to your Kaldi-style queue.pl / slurm.pl
# (multi-node training needs slurm.pl or ssh hosts, see espnet2.bin.launch).
export train_cmd="utils/run_local.sh"
export cuda_cmd="utils/run_local.sh"
export decode_cmd="utils/run_local.sh"
