#!/usr/bin/env bash
# The README's "Evidence" section, regenerated: one `ganstack ablate` command per claim, 3 seeds each.
# Usage: bash benchmarks/evidence.sh OUTDIR [JOBS]
#
# Every claim runs the toy preset as it is (PacGAN's 4 x 400 ReLU + BatchNorm G, 750 kimg at batch 64);
# methods that build their own networks (ddgan, cmgan) keep theirs. Cells with identical settings are
# computed once: each claim's folder links its cells/ to one shared folder per dataset (ablate skips
# finished cells and refuses a cell trained with other settings), so the commands below are exactly the
# README's, and running any one alone gives the same numbers. The README's two "previous round" sections
# (the paper G, --set mlp_g=paper, 1000 kimg) carry their own commands.
# Cost on an idle 2-core CPU, 2 cells at a time with one thread each: a vanilla cell about 3-4 minutes,
# smart/clr 4-5, the headline stack 6-8, ddgan 2-3, cmgan 5-7, a 30-kimg StackedMNIST cell 4-5 (plus 1-2
# per evaluation of 10k samples, ddgan 10-13); the whole script took 2 h 15 min with four or five cells at a time.
set -euo pipefail
OUT=${1:?usage: evidence.sh OUTDIR [JOBS]}
JOBS=${2:-2}
export OMP_NUM_THREADS=1
mkdir -p "$OUT/cells-gaussians25" "$OUT/cells-grid49"
link() { mkdir -p "$OUT/$1"; [ -e "$OUT/$1/cells" ] || ln -s "../cells-$2" "$OUT/$1/cells"; }
A="ganstack ablate --kimg 750 --seeds 0-2 --jobs $JOBS"

# Diffusion-GAN Fig. 5, CLR-GAN and the headline stack against each of its members (25 Gaussians).
link stack gaussians25
$A --outdir "$OUT/stack" --data toy:gaussians25 --stacks "none;diffusion;smart;clr;diffusion,smart,clr" \
   --opt smart.score=analytic

# SMaRt Fig. 2: on the 49-point grid, vanilla | SMaRt (the exact score of the mixture) | Diffusion-GAN.
link smart grid49
$A --outdir "$OUT/smart" --data toy:grid49 --stacks "none;smart;diffusion" --opt smart.score=analytic

# DDGAN Fig. 6: vanilla | DDGAN (its own MLPs and its paper's optimiser for 2-D data, App. C.5).
link ddgan gaussians25
$A --outdir "$OUT/ddgan" --data toy:gaussians25 --stacks "none;ddgan"

# CM-GAN Fig. 3: pure GAN | pure CD | CD + GAN over the paper's alpha sweep (the exact teacher).
link cmgan gaussians25
$A --outdir "$OUT/cmgan" --data toy:gaussians25 --opt cmgan.teacher=analytic \
   --stack "cmgan cmgan.mode=gan" --stack "cmgan cmgan.mode=cd" --stack "cmgan cmgan.alpha=0.025" \
   --stack "cmgan cmgan.alpha=0.005" --stack "cmgan cmgan.alpha=0.01" --stack "cmgan cmgan.alpha=0.25"

# StackedMNIST 16x16 (issue #11, part 4): vanilla | diffusion | clr | ddgan, 30 kimg, scored by the calibrated
# stackedmnist metric (modes of 1000 with confident digits, hq share, KL; the papers' count as modes_protocol).
mkdir -p "$OUT/smnist"
[ -e "$OUT/smnist/smnist16.zip" ] || ganstack dataset convert --source ../shared/data/mnist --stacked 10000 \
    --resolution 16 --dest "$OUT/smnist/smnist16.zip"
[ -e "$OUT/smnist/digit-clf.pt" ] || ganstack train-classifier --data ../shared/data/mnist --out "$OUT/smnist/digit-clf.pt"
python benchmarks/stackedmnist_calibration.py --data "$OUT/smnist/smnist16.zip" --classifier "$OUT/smnist/digit-clf.pt"
GANSTACK_DIGIT_CLASSIFIER="$OUT/smnist/digit-clf.pt" ganstack ablate --outdir "$OUT/smnist/abl" \
    --data "$OUT/smnist/smnist16.zip" --cfg cifar --set cbase=512 --set cmax=32 --batch 32 --kimg 30 --tick 2 --snap 15 \
    --metrics stackedmnist10k --seeds 0-2 --jobs "$JOBS" --stacks "none;diffusion;clr;ddgan"
