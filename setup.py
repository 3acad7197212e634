"""flux_jax: FluxViT video transformers in JAX, deployable at any token budget."""

import pathlib

import setuptools

here = pathlib.Path(__file__).parent
requirements = [
    line.split('#')[0].strip() for line in (here / 'requirements.txt').read_text().splitlines()
    if line.split('#')[0].strip()
]
jax_pin = next(r for r in requirements if r.startswith('jax=='))
# The accelerator's jax (Makefile ACCEL=...): the same pinned jax with its plugin.
accelerators = {a: [jax_pin.replace('jax==', f'jax[{a}]==')] for a in ('tpu', 'cuda12', 'cuda13')}

setuptools.setup(
    name='flux_jax',
    version='0.1.0',
    description='FluxViT (ICCV 2025) in JAX/Flax: flexible video training, any token budget',
    long_description=(here / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    # The repository's configs/ ships inside the package as flux_jax.configs: the recipes
    # that `--config` and flux_jax.config.recipe name, in a checkout and in a wheel alike.
    packages=setuptools.find_packages(include=['flux_jax', 'flux_jax.*']) + [
        'flux_jax.configs', 'flux_jax.configs.sweeps'],
    package_dir={'flux_jax.configs': 'configs'},
    python_requires='>=3.10',
    install_requires=requirements,
    extras_require={'torch': ['torch>=2.4'], **accelerators},
    entry_points={'console_scripts': [
        f'flux-{name.replace("_", "-")}=flux_jax.cli.{name}:run' for name in (
            'train', 'evaluate', 'predict', 'export', 'convert', 'convert_iv2',
            'build_dataset', 'demo', 'convert_text')]},
)
