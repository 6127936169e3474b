import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# OpenMMLab layout: configs (and the tools and metafiles) ship inside the package under
# mmtt/.mim/, which is where mmengine resolves `mmtt::` config bases. An editable install
# links them to the checkout; a wheel or sdist build copies them.
MIM_FILES = ['configs', 'tools', 'model-index.yml']


def add_mim_extension() -> None:
    editable = any(arg in sys.argv for arg in ('develop', 'editable_wheel'))
    root = osp.dirname(osp.abspath(__file__))
    mim = osp.join(root, 'mmtt', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(root, name), osp.join(mim, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if not osp.exists(src):
            continue
        if editable:
            os.symlink(osp.relpath(src, mim), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copyfile(src, dst)


class BuildWithMimHook(build_py):
    """Also puts the start-up hook of ``mmtt/_mim_hook.py`` at the top of the built tree, so a
    wheel install resolves ``mmtt::`` config bases in scripts that never import mmtt (mmseg's
    and mmdet's own tools). Editable installs import mmtt for that instead."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        shutil.copyfile(osp.join('mmtt', '_mim_hook.py'), osp.join(self.build_lib, '_mmtt_mim_hook.py'))
        with open(osp.join(self.build_lib, 'mmtt-mim.pth'), 'w') as f:
            f.write('import _mmtt_mim_hook; _mmtt_mim_hook.install()\n')


def read_version() -> str:
    scope = {}
    with open('mmtt/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmtt',
        version=read_version(),
        description='Training-free Token Transforming for OpenMMLab and timm vision transformers',
        long_description=open('README.md').read(),
        long_description_content_type='text/markdown',
        packages=find_packages(include=['mmtt', 'mmtt.*']),
        include_package_data=True,
        package_data={'mmtt': ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/configs/**/*.yml',
                               '.mim/tools/*.py', '.mim/tools/*.sh']},
        python_requires='>=3.9',
        # torch is deliberately unpinned here; tools/setup_env.sh installs the pinned stack (an
        # unpinned torch from the registry pulls several GB of CUDA wheels).
        install_requires=['torch>=2.1', 'mmengine>=0.10.7,<1.0', 'numpy', 'tqdm'],
        extras_require={
            'seg': ['mmcv>=2.1.0,<2.2.0', 'mmsegmentation>=1.2.2,<1.3'],
            'det': ['mmcv>=2.1.0,<2.2.0', 'mmdet>=3.3.0,<3.4'],
            'timm': ['timm>=1.0.26'],
        },
        entry_points={'console_scripts': [
            'mmtt-test = mmtt.tools.test:main',
            'mmtt-train = mmtt.tools.train:main',
            'mmtt-benchmark = mmtt.tools.benchmark:main',
            'mmtt-get-flops = mmtt.tools.get_flops:main',
            'mmtt-pareto = mmtt.tools.pareto:main',
            'mmtt-reduction-cost = mmtt.tools.reduction_cost:main',
            'mmtt-fidelity = mmtt.tools.fidelity:main',
            'mmtt-visualize = mmtt.tools.visualize:main',
            'mmtt-demo = mmtt.tools.demo:main',
            'mmtt-test-timm = mmtt.tools.test_timm:main',
            'mmtt-update-metafile = mmtt.tools.update_metafile:main',
            'mmtt-convert-dpt-checkpoint = mmtt.tools.convert_dpt_checkpoint:main',
            'mmtt-llava-tokens = mmtt.tools.llava_tokens:main',
            'mmtt-tune = mmtt.tools.tune:main',
        ]},
        cmdclass={'build_py': BuildWithMimHook},
        license='Apache-2.0',
        zip_safe=False,
    )
