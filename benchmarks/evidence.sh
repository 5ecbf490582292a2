#!/usr/bin/env bash
# The README's "Evidence" section, regenerated: one `ganstack ablate` command per claim, 3 seeds each, the
# toy preset's budget (1000 kimg, batch 64) per cell. Usage: bash benchmarks/evidence.sh OUTDIR [JOBS]
#
# Cells with identical settings are computed once: each claim's folder links its cells/ to one shared
# folder per dataset (ablate skips finished cells and refuses a cell trained with other settings), so
# the commands below are exactly the README's, and running any one alone gives the same numbers.
# About 1.5 h on an idle 2-core CPU with JOBS=2.
set -euo pipefail
OUT=${1:?usage: evidence.sh OUTDIR [JOBS]}
JOBS=${2:-2}
export OMP_NUM_THREADS=1
mkdir -p "$OUT/cells-gaussians25" "$OUT/cells-grid49"
link() { mkdir -p "$OUT/$1"; [ -e "$OUT/$1/cells" ] || ln -s "../cells-$2" "$OUT/$1/cells"; }
A="ganstack ablate --kimg 1000 --seeds 0-2 --jobs $JOBS"

# Diffusion-GAN Fig. 5: vanilla | diffusion | the headline stack on 25 Gaussians.
link diffusion gaussians25
$A --outdir "$OUT/diffusion" --data toy:gaussians25 --stacks "none;diffusion;diffusion,smart,clr;diffusion diffusion.sigma=0.05" \
   --opt smart.score=analytic

# SMaRt Fig. 2: on the 49-point grid, vanilla | SMaRt (lambda 0.01, CIFAR; 0.1, ImageNet) | Diffusion-GAN | the stack.
link smart grid49
$A --outdir "$OUT/smart" --data toy:grid49 --stacks "none;smart;smart smart.weight=0.1;diffusion;diffusion,smart,clr" \
   --opt smart.score=analytic

# DDGAN Fig. 6: vanilla | DDGAN (its paper's optimiser for 2-D data, App. C.5).
link ddgan gaussians25
$A --outdir "$OUT/ddgan" --data toy:gaussians25 --stacks "none;ddgan"

# CLR-GAN: vanilla | clr (L1, the paper) | clr (MSE, the official code) | the headline stack.
link clr gaussians25
$A --outdir "$OUT/clr" --data toy:gaussians25 --stacks "none;clr clr.dist=l1;clr clr.dist=mse;diffusion,smart,clr" \
   --opt smart.score=analytic

# CM-GAN Fig. 3: pure GAN | pure CD | CD + GAN over the alpha sweep.
link cmgan gaussians25
$A --outdir "$OUT/cmgan" --data toy:gaussians25 --opt cmgan.teacher=analytic \
   --stack "cmgan cmgan.mode=gan" --stack "cmgan cmgan.mode=cd" --stack "cmgan cmgan.alpha=0.025"
# The rest of Fig. 3's sweep (not run in the session that wrote the README; the cells above are reused):
# $A ... --stack "cmgan cmgan.alpha=0.005" --stack "cmgan cmgan.alpha=0.01" --stack "cmgan cmgan.alpha=0.25"

# The headline stack against each of its members.
link stack gaussians25
$A --outdir "$OUT/stack" --data toy:gaussians25 --stacks "none;diffusion;smart;clr clr.dist=l1;diffusion,smart,clr" \
   --opt smart.score=analytic
