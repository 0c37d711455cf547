"""The extraction settings a cache records and the registries they name: `ExtractionConfig`, backbones, preprocessing, KerasHub families."""
