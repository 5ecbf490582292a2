"""Transfer learning from official StyleGAN2-ADA / StyleGAN3 pickles and from ganstack checkpoints.

* :func:`import_pkl` (``ganstack import-pkl SRC.pkl DEST.pt``) turns an official network pickle into a
  ganstack checkpoint that ``generate --network`` and ``metrics --network`` read. The checkpoint
  records the networks and the training options that rebuild them (no optimiser state: it is a
  start for ``--init``, not a run to ``--resume``).
* :func:`load_init_weights` is StyleGAN2-ADA's ``--resume PKL`` (here ``--init``): G, D and G_ema
  weights of a pickle or checkpoint are copied by name into freshly built networks of a new run,
  whose optimisers and plugin state start fresh.
* :func:`freeze_discriminator_layers` is StyleGAN2-ADA's ``--freezed N`` (Freeze-D): the first ``N``
  layers of D, counted as the official ``DiscriminatorBlock`` counts them, stop training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import click
import torch

from ganstack.metrics.detectors import file_sha256
from ganstack.stylegan_base import legacy
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import ConfigError
from ganstack.training.config import TrainConfig, resolve
from ganstack.training.nets import backbone_kwargs

__all__ = ['import_pkl', 'checkpoint_from_pkl', 'imported_config', 'load_init_weights', 'InitReport', 'InitSource',
           'read_init_source', 'init_architecture', 'check_fine_tuning', 'apply_fine_tuning',
           'freeze_discriminator_layers', 'discriminator_layers', 'import_pkl_command']

ROLES = ('G', 'D', 'G_ema')


# ------------------------------------------------------------------------------------------------
# Official pickle -> ganstack checkpoint

def _not_expressible(G_kw: dict, D_kw: Optional[dict]) -> list[str]:
    """Official arguments that ``ganstack train`` has no option for and that differ from what it builds."""
    bad = []
    w_dim = G_kw['w_dim']

    def want(where, kw, key, default, same_as=()):
        if key in kw and kw[key] != default and kw[key] not in same_as:
            bad.append(f'{where}{key}={kw[key]!r} (ganstack train builds {default!r})')
    m, s = G_kw['mapping_kwargs'], G_kw['synthesis_kwargs']
    if G_kw['c_dim']:
        want('G mapping ', m, 'embed_features', None, (w_dim,))
    want('G mapping ', m, 'layer_features', None, (w_dim,))
    want('G mapping ', m, 'activation', 'lrelu')
    want('G mapping ', m, 'lr_multiplier', 0.01)
    want('G synthesis ', s, 'resample_filter', [1, 3, 3, 1])
    want('G synthesis ', s, 'use_noise', True)
    want('G synthesis ', s, 'activation', 'lrelu')
    want('G synthesis ', s, 'kernel_size', 3)
    if D_kw is not None:
        cmap = min(D_kw.get('channel_base', 32768) // 4, D_kw.get('channel_max', 512))
        want('D ', D_kw, 'cmap_dim', None, (cmap,))
        want('D block ', D_kw['block_kwargs'], 'activation', 'lrelu')
        want('D block ', D_kw['block_kwargs'], 'resample_filter', [1, 3, 3, 1])
        dm = D_kw['mapping_kwargs'] if D_kw.get('c_dim') else {}  # no label mapping without labels
        want('D mapping ', dm, 'num_layers', 8)
        want('D mapping ', dm, 'embed_features', None, (cmap,))
        want('D mapping ', dm, 'layer_features', None, (cmap,))
        want('D mapping ', dm, 'activation', 'lrelu')
        want('D mapping ', dm, 'lr_multiplier', 0.01)
        want('D epilogue ', D_kw['epilogue_kwargs'], 'mbstd_num_channels', 1)
        want('D epilogue ', D_kw['epilogue_kwargs'], 'activation', 'lrelu')
        for key in ('channel_base', 'channel_max', 'conv_clamp'):
            g_val = s.get(key, {'channel_base': 32768, 'channel_max': 512, 'conv_clamp': None}[key])
            d_val = D_kw.get(key, {'channel_base': 32768, 'channel_max': 512, 'conv_clamp': None}[key])
            if g_val != d_val:
                bad.append(f'{key} differs between G ({g_val}) and D ({d_val}) (ganstack train uses one value for both)')
    return bad


IMPORT_TAIL = ('The pickle can still be loaded in Python with ganstack.stylegan_base.legacy.load_official_networks, '
               'but not written as a checkpoint.')
INIT_TAIL = ('A run built from ganstack train\'s options would compute something else with these weights, so it '
             'cannot start from them; fine-tune from a StyleGAN2-ADA / StyleGAN3 --cfg=stylegan2 snapshot with '
             'the official defaults for these arguments.')


def imported_config(nets: dict, snap: legacy.OfficialSnapshot,
                    tail: str = IMPORT_TAIL) -> tuple[TrainConfig, dict, list[str]]:
    """The training options and dataset description that rebuild ``nets`` through ``build_networks``.

    ``tail`` ends the message that refuses arguments ``ganstack train`` cannot express (what to do instead)."""
    G_kw = (nets.get('G_ema') or nets['G']).kwargs
    D_kw = nets['D'].kwargs if 'D' in nets else None
    bad = _not_expressible(G_kw, D_kw)
    if bad:
        raise ConfigError(f'{snap.source}: the networks use arguments that ganstack train has no option for: '
                          f'{"; ".join(bad)}. {tail}')
    notes = []
    s = G_kw['synthesis_kwargs']
    tsk = snap.training_set_kwargs or {}
    c_dim = G_kw['c_dim']
    spec = tsk.get('path') if isinstance(tsk.get('path'), str) else None
    name = os.path.splitext(os.path.basename(spec))[0] if spec else os.path.splitext(os.path.basename(snap.source))[0]
    data_info = dict(kind='image', name=name, spec=spec, len=tsk.get('max_size'), raw_len=tsk.get('max_size'),
                     label_dim=c_dim, num_classes=c_dim or None, resolution=G_kw['img_resolution'],
                     num_channels=G_kw['img_channels'], max_size=None, seed=None, mirror=bool(tsk.get('xflip')),
                     use_labels=c_dim > 0)
    arch = dict(z_dim=G_kw['z_dim'], w_dim=G_kw['w_dim'], map_depth=G_kw['mapping_kwargs'].get('num_layers', 8),
                cbase=s.get('channel_base', 32768), cmax=s.get('channel_max', 512),
                g_architecture=s.get('architecture', 'skip'), conv_clamp=s.get('conv_clamp'))
    if D_kw is not None:
        arch['d_architecture'] = D_kw.get('architecture', 'resnet')
        group = D_kw['epilogue_kwargs'].get('mbstd_group_size', 4)
        if group is not None:
            arch['mbstd_group'] = int(group)
        else:
            notes.append('D used minibatch-std over the whole minibatch (mbstd_group_size=None); the checkpoint '
                         'records the preset group size instead (it holds no weights).')
    else:
        notes.append('The pickle has no D; the checkpoint holds a freshly initialised D.')
    cfg = TrainConfig(data=spec or snap.source, cond=c_dim > 0, mirror=bool(tsk.get('xflip')), **arch)
    cfg.mark_user_set(set(arch) | {'data', 'cond'})
    if cfg.mbstd_group:
        cfg.batch = max(32 // cfg.mbstd_group, 1) * cfg.mbstd_group
    try:
        resolve(cfg, data_info)
    except ConfigError as exc:
        raise ConfigError(f'{snap.source}: its architecture does not fit ganstack\'s training options: {exc}') from None
    beta = (nets.get('G_ema') or nets['G']).module.mapping.w_avg_beta
    if beta != 0.995:
        notes.append(f'The official mapping tracked w_avg with beta {beta}; a run started from this checkpoint '
                     f'tracks it with ganstack\'s 0.995 (StyleGAN2-ADA\'s value).')
    return cfg, data_info, notes


def _check_rebuild(cfg: TrainConfig, data_info: dict, nets: dict) -> None:
    """The networks the recorded options build must compute exactly what the imported ones do."""
    from ganstack.stylegan_base.networks import Discriminator, Generator

    G_kw, D_kw = backbone_kwargs(cfg, data_info)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        built = {'G': Generator(**G_kw), 'D': Discriminator(**D_kw)}
        for role, imp in nets.items():
            mine = built['D' if role == 'D' else 'G']
            try:
                mine.load_state_dict(imp.module.state_dict(), strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f'The options recorded for {role} do not rebuild it ({str(exc).splitlines()[0]}).'
                                      f' This is a ganstack bug; please report it with the pickle\'s description.')
            mine.eval()
            if role == 'D':
                n = cfg.mbstd_group or 4  # one group: a whole-minibatch std (group None) computes the same
                x = torch.randn(n, data_info['num_channels'], data_info['resolution'], data_info['resolution'])
                c = torch.eye(max(D_kw['c_dim'], 1))[torch.arange(n) % max(D_kw['c_dim'], 1)][:, :D_kw['c_dim']]
                a, b = mine(x, c), imp.module(x, c)
            else:
                z = torch.randn(2, G_kw['z_dim'])
                c = torch.zeros(2, G_kw['c_dim'])
                if G_kw['c_dim']:
                    c[:, 0] = 1
                a = mine(z, c, truncation_psi=0.7, noise_mode='const')
                b = imp.module(z, c, truncation_psi=0.7, noise_mode='const')
            if not torch.allclose(a, b, atol=1e-5, rtol=1e-5):
                raise CheckpointError(f'The options recorded for {role} rebuild a network that computes differently '
                                      f'(max diff {(a - b).abs().max().item():.3g}); not writing the checkpoint.')


def checkpoint_from_pkl(src: str) -> dict:
    """The ganstack checkpoint dict (as ``checkpoint.load`` returns) for official pickle ``src``, in memory.

    ``generate``/``metrics --network X.pkl`` can use it where they take a checkpoint.
    """
    nets, snap = legacy.load_official_networks(src)
    if 'G_ema' not in nets and 'G' not in nets:
        raise CheckpointError(f'{src} holds no generator (only {", ".join(nets)}); nothing to import.')
    cfg, data_info, notes = imported_config(nets, snap)
    _check_rebuild(cfg, data_info, nets)
    from ganstack.stylegan_base.networks import Discriminator

    G_ema = (nets.get('G_ema') or nets['G']).module
    G = (nets.get('G') or nets['G_ema']).module
    if 'G' not in nets:
        notes.append('The pickle has no G (training generator); G_ema stands in for it.')
    if 'G_ema' not in nets:
        notes.append('The pickle has no G_ema; G stands in for it.')
    if 'D' in nets:
        D_state = nets['D'].module.state_dict()
    else:
        with torch.random.fork_rng(devices=[]):
            D_state = Discriminator(**backbone_kwargs(cfg, data_info)[1]).state_dict()
    for imp in nets.values():
        notes.extend(n for n in imp.notes if n not in notes)
    ckpt = {
        'format': ckpt_io.FORMAT,
        'version': ckpt_io.VERSION,
        'config': cfg.to_dict(),
        'dataset': data_info,
        'plugins': [],
        'plugin_options': {},
        'plugin_state': {},
        'G': G.state_dict(),
        'D': D_state,
        'G_ema': G_ema.state_dict(),
        'cur_nimg': 0,
        'imported_from': dict(path=os.path.abspath(src), sha256=file_sha256(src), networks=sorted(nets),
                              official_kwargs={role: imp.official_kwargs for role, imp in nets.items()},
                              training_set_kwargs=snap.training_set_kwargs, augment_p=snap.augment_p,
                              notes=notes),
    }
    return ckpt


def import_pkl(src: str, dest: str) -> dict:
    """Write the networks of official pickle ``src`` as a ganstack checkpoint ``dest``; returns it."""
    ckpt = checkpoint_from_pkl(src)
    ckpt_io.atomic_save(ckpt, dest)
    return ckpt


# ------------------------------------------------------------------------------------------------
# --init: weights into freshly built networks

@dataclass
class InitReport:
    """What ``--init`` copied: per role, the tensors copied, left at their fresh values, and ignored."""

    source: str
    kind: str                                   # 'official pickle' or 'ganstack checkpoint'
    copied: dict = field(default_factory=dict)  # role -> number of tensors
    fresh: dict = field(default_factory=dict)   # role -> names only the new network has
    ignored: dict = field(default_factory=dict)  # role -> names only the source has
    notes: list = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f'--init {self.source} ({self.kind}):']
        for role in ROLES:
            if role in self.copied:
                line = f'  {role}: {self.copied[role]} tensors copied'
                if self.fresh.get(role):
                    line += f'; fresh: {", ".join(self.fresh[role][:6])}{" ..." if len(self.fresh[role]) > 6 else ""}'
                if self.ignored.get(role):
                    line += (f'; not used: {", ".join(self.ignored[role][:6])}'
                             f'{" ..." if len(self.ignored[role]) > 6 else ""}')
                out.append(line)
        out += [f'  note: {n}' for n in self.notes]
        return out


# The architecture options a run started with --init takes from its source unless the user gives them: the
# ones that leave no trace in tensor shapes (conv_clamp, the G architecture) would otherwise change silently what
# the copied weights compute, and the others would only fail to fit.
INIT_ARCHITECTURE = ('z_dim', 'w_dim', 'map_depth', 'cbase', 'cmax', 'g_architecture', 'd_architecture',
                     'conv_clamp')


@dataclass
class InitSource:
    """The networks of an ``--init`` source, read once: an official pickle or a ganstack checkpoint."""

    path: str
    kind: str                       # 'official pickle' or 'ganstack checkpoint'
    states: dict                    # role -> state dict
    notes: list = field(default_factory=list)
    config: Optional[dict] = None   # the source's TrainConfig as a dict (None when it records none)


def read_init_source(source: str) -> InitSource:
    """Read ``--init``'s networks; refuses a pickle of an architecture ``ganstack train`` cannot build."""
    path = os.path.expanduser(str(source))
    if not os.path.exists(path):
        raise CheckpointError(f'--init {source!r}: no such file. Give an official network-snapshot-*.pkl or a '
                              f'ganstack checkpoint (.pt or run folder).')
    if os.path.isfile(path) and legacy.looks_like_pickle(path):
        nets, snap = legacy.load_official_networks(path)
        if 'G_ema' not in nets and 'G' not in nets:
            raise CheckpointError(f'--init {source}: the pickle holds no generator (only {", ".join(nets)}); give a '
                                  f'network-snapshot-*.pkl with G or G_ema.')
        try:
            cfg, _, notes = imported_config(nets, snap, tail=INIT_TAIL)
        except ConfigError as exc:
            raise ConfigError(f'--init {exc}') from None
        notes = notes + [n for imp in nets.values() for n in imp.notes if n not in notes]
        return InitSource(path, 'official pickle', {role: imp.module.state_dict() for role, imp in nets.items()},
                          notes, cfg.to_dict())
    ckpt = ckpt_io.load(path, flag='--init', purpose='weights')  # networks only are needed
    return InitSource(ckpt['path'], 'ganstack checkpoint', {role: ckpt[role] for role in ROLES if role in ckpt}, [],
                      ckpt.get('config') if isinstance(ckpt.get('config'), dict) else None)


def refuse_pickle_resume(path: str) -> None:
    """``--resume X.pkl``: StyleGAN2-ADA's --resume PKL is a fine-tuning start, which is ``--init`` here."""
    path = os.path.expanduser(str(path))
    if os.path.isfile(path) and legacy.looks_like_pickle(path):
        raise CheckpointError(f'--resume {path} is an official StyleGAN2-ADA / StyleGAN3 network pickle. In '
                              f'ganstack --resume continues a ganstack run exactly; StyleGAN2-ADA\'s --resume PKL (a '
                              f'new run that starts from the pickle\'s weights) is --init {path}.')


def init_architecture(cfg: TrainConfig, src: InitSource) -> list[str]:
    """Take the architecture options the user did not give from ``src`` (before the preset fills the rest);
    returns ``name=value`` for each option taken."""
    taken = []
    for name in INIT_ARCHITECTURE:
        if src.config is None or name not in src.config or cfg.is_user_set(name):
            continue
        if getattr(cfg, name) != src.config[name]:
            setattr(cfg, name, src.config[name])
            taken.append(f'{name}={src.config[name]}')
    return taken


def check_fine_tuning(cfg: TrainConfig, stack, data_info: dict, src: Optional[InitSource]) -> None:
    """``--init`` and ``--freezed`` checked on networks built for the check (before a run folder exists): the
    source's tensors fit, and D has at least ``--freezed`` layers."""
    if src is None and not cfg.freezed:
        return
    from ganstack.training.nets import build_networks
    with torch.random.fork_rng(devices=[]):
        nets = build_networks(stack, cfg, data_info, 'cpu')
    if src is not None:
        load_init_weights(nets, src)
    if cfg.freezed:
        layers = discriminator_layers(nets.D)
        if cfg.freezed > len(layers):
            raise ConfigError(f'--freezed {cfg.freezed}: this run\'s D has only {len(layers)} layers '
                              f'({layers[0]} ... {layers[-1]}, counted as StyleGAN2-ADA counts them); give '
                              f'--freezed 0..{len(layers)}.')


def apply_fine_tuning(nets, cfg: TrainConfig, init, log=print) -> Optional[InitReport]:
    """In a new run: copy ``init``'s weights (a path or :class:`InitSource`; None: none); then, new run or resumed,
    freeze the first ``cfg.freezed`` layers of D. Call after the networks are built, before the optimisers."""
    report = None
    with torch.random.fork_rng(devices=[]):
        if init is not None:
            report = load_init_weights(nets, init)
            for line in report.lines():
                log(line)
        if cfg.freezed:
            frozen = freeze_discriminator_layers(nets.D, cfg.freezed)
            log(f'--freezed {cfg.freezed}: D layers {", ".join(frozen)} do not train.')
    return report


def _source_states(source) -> tuple[dict, str, list]:
    src = source if isinstance(source, InitSource) else read_init_source(source)
    return dict(src.states), src.kind, list(src.notes)


@torch.no_grad()
def load_init_weights(nets, source) -> InitReport:
    """Copy G/D/G_ema tensors of ``source`` (a path or an :class:`InitSource`) into ``nets`` (a :class:`~ganstack.training.nets.Networks`) by name.

    Like StyleGAN2-ADA's ``copy_params_and_buffers(require_all=False)``: tensors only one side has are
    left alone (and reported), tensors both have must agree in shape. A missing G_ema comes from G and
    vice versa. Call it before the optimisers are built; their state, the counters and plugin state
    are not touched.
    """
    states, kind, notes = _source_states(source)
    if 'G_ema' not in states and 'G' in states:
        states['G_ema'] = states['G']
        notes.append('the source has no G_ema; it starts as a copy of G')
    if 'G' not in states and 'G_ema' in states:
        states['G'] = states['G_ema']
        notes.append('the source has no G; it starts as a copy of G_ema')
    report = InitReport(source=getattr(source, 'path', source), kind=kind, notes=notes)
    mismatched = []
    plans = {}
    for role in ROLES:
        target = getattr(nets, role, None)
        if target is None:
            continue
        if role not in states:
            report.notes.append(f'the source has no {role}; it keeps its fresh initialisation')
            continue
        src = states[role]
        own = dict(target.named_parameters())
        own.update(dict(target.named_buffers()))
        names = [k for k in target.state_dict() if k in own]
        common = [k for k in names if k in src]
        mismatched += [f'{role}.{k} {list(src[k].shape)} vs {list(own[k].shape)}' for k in common
                       if tuple(src[k].shape) != tuple(own[k].shape)]
        plans[role] = (own, common)
        report.fresh[role] = [k for k in names if k not in src]
        report.ignored[role] = sorted(k for k in src if k not in own)
    if mismatched:
        raise CheckpointError(f'--init {report.source}: the source networks do not fit this run\'s networks: '
                              f'{", ".join(mismatched[:8])}{" ..." if len(mismatched) > 8 else ""}. Fine-tuning '
                              f'copies weights by name, so the architecture must match: the same resolution, '
                              f'channel counts (--cbase/--cmax), mapping depth (--map-depth), z/w sizes and '
                              f'conditioning as the source.')
    for role, (own, common) in plans.items():
        for k in common:
            own[k].copy_(states[role][k].to(device=own[k].device, dtype=own[k].dtype))
        report.copied[role] = len(common)
    return report


# ------------------------------------------------------------------------------------------------
# --freezed: Freeze-D

def discriminator_layers(D: torch.nn.Module) -> list[str]:
    """D's layers in the order StyleGAN2-ADA numbers them for ``freeze_layers``: block by block from the
    highest resolution, and in each block fromrgb, conv0, conv1, skip (the 4x4 epilogue is not counted)."""
    resolutions = getattr(D, 'block_resolutions', None)
    if not resolutions or not all(hasattr(D, f'b{res}') for res in resolutions):
        raise ConfigError(f'--freezed needs a StyleGAN2 discriminator (blocks b<res> from the highest resolution '
                          f'down), but D is a {type(D).__name__}.')
    names = []
    for res in resolutions:
        block = getattr(D, f'b{res}')
        names += [f'b{res}.{n}' for n in ('fromrgb', 'conv0', 'conv1', 'skip')
                  if isinstance(getattr(block, n, None), torch.nn.Module)]
    return names


def freeze_discriminator_layers(D: torch.nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` layers of D (StyleGAN2-ADA ``--freezed``); returns their names.

    As the official code does, a frozen layer's weight and bias become buffers: they stay in the state
    dict under the same names (checkpoints and ``--init`` see no difference), no optimiser built
    afterwards sees them, and ``requires_grad_(True)`` cannot wake them up.
    """
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f'--freezed takes a number of layers >= 0, got {n!r}.')
    layers = discriminator_layers(D) if n else []
    frozen = layers[:n]
    for name in frozen:
        layer = D.get_submodule(name)
        for pname, p in list(layer._parameters.items()):
            if p is None:
                continue
            del layer._parameters[pname]
            layer.register_buffer(pname, p.detach().clone())
    return frozen


# ------------------------------------------------------------------------------------------------
# CLI

@click.command('import-pkl')
@click.argument('src', type=click.Path(dir_okay=False))
@click.argument('dest', type=click.Path(dir_okay=False))
@click.option('--force', is_flag=True, default=False, help='Overwrite DEST if it exists.')
def import_pkl_command(src, dest, force):
    """Convert an official StyleGAN2-ADA / StyleGAN3 (--cfg=stylegan2) network pickle into a ganstack checkpoint.

    The pickle is read without its embedded code. DEST works with `generate --network` and
    `metrics --network`, and as a fine-tuning start.
    """
    if os.path.exists(dest) and not force:
        raise click.UsageError(f'{dest} exists; give another name or --force to overwrite it.')
    ckpt = import_pkl(src, dest)
    cfg, info, imp = ckpt['config'], ckpt['dataset'], ckpt['imported_from']
    click.echo(f'Imported {", ".join(imp["networks"])} from {src}')
    click.echo(f'  {info["resolution"]}x{info["resolution"]}x{info["num_channels"]}, '
               f'{"conditional (" + str(info["label_dim"]) + " labels)" if info["label_dim"] else "unconditional"}, '
               f'z {cfg["z_dim"]}, w {cfg["w_dim"]}, mapping {cfg["map_depth"]} layers, cbase {cfg["cbase"]}, '
               f'cmax {cfg["cmax"]}, G {cfg["g_architecture"]}, D {cfg["d_architecture"]}, '
               f'conv_clamp {cfg["conv_clamp"]}, mbstd group {cfg["mbstd_group"]}')
    if imp['augment_p'] is not None:
        click.echo(f'  ADA p at the snapshot: {imp["augment_p"]:.3f} (not carried over; --init starts plugins fresh)')
    for note in imp['notes']:
        click.echo(f'  note: {note}')
    click.echo(f'Wrote {dest}. Try: ganstack generate --network {dest} --seeds 0-7')
