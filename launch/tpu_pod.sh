#!/usr/bin/env bash
# A vqlab job on a Cloud TPU pod slice: the same command on every worker; JAX finds the
# pod from the TPU metadata (VQLAB_DISTRIBUTED=1 -> jax.distributed.initialize()).
#   launch/tpu_pod.sh NAME ZONE setup        # clone + install on every worker, once
#   launch/tpu_pod.sh NAME ZONE train --config configs/vqgan_imagenet_f16.py --workdir /mnt/shared/f16
# The workdir must be shared by the workers (a Filestore / NFS mount). A maintenance event
# sends SIGTERM: the run finishes its step, checkpoints and exits 0; rerun to resume.
set -euo pipefail
name=$1 zone=$2
shift 2
repo=${VQLAB_REPO:-https://github.com/vqlab/vqlab}
if [ "${1:-}" = setup ]; then
  remote="git clone -q $repo ~/vqlab 2>/dev/null || git -C ~/vqlab pull -q; cd ~/vqlab && python3 -m venv .venv && .venv/bin/pip install -q -e '.[audio]' 'jax[tpu]' && bash launch/install_speech.sh"
else
  remote="cd ~/vqlab && VQLAB_DISTRIBUTED=1 .venv/bin/vqlab $(printf '%q ' "$@")"
fi
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote"
