from setuptools import find_packages, setup


def read_version() -> str:
    scope = {}
    with open('mmtt/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmtt',
    version=read_version(),
    description='Training-free Token Transforming for OpenMMLab and timm vision transformers',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmtt', 'mmtt.*']),
    python_requires='>=3.9',
    # torch is deliberately unpinned here and never installed by this file: the set-up script
    # installs the pinned stack (an unpinned torch from the registry pulls CUDA wheels).
    install_requires=['torch>=2.1', 'mmengine>=0.10.0,<1.0'],
    extras_require={
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.2.0,<1.3'],
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.3.0,<3.4'],
        'timm': ['timm>=1.0'],
    },
    license='Apache-2.0',
)
