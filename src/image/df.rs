//! Disk usage of images for `GET /system/df`: each image's shared size (layers other
//! images also use) and the total size of all distinct layers.

use super::ImageStore;
use crate::error::ApiResult;
use std::collections::HashMap;

/// What `system df` needs to know about the image store.
#[derive(Debug, Clone, Default)]
pub struct LayerUsage {
    /// Image id → bytes in layers that at least one other image uses too.
    pub shared: HashMap<String, u64>,
    /// Bytes in all distinct layers.
    pub layers_size: u64,
}

impl ImageStore {
    /// Layer sharing between images (dockerd's `SharedSize` and `LayersSize`).
    pub fn layer_usage(&self) -> ApiResult<LayerUsage> {
        let images = self.all_images()?;
        let mut users: HashMap<&str, usize> = HashMap::new();
        for m in &images {
            for c in &m.layers {
                *users.entry(c.as_str()).or_default() += 1;
            }
        }
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for c in users.keys() {
            let size = self.layers.get(c)?.map(|m| m.size).unwrap_or(0);
            sizes.insert(c, size);
        }
        let mut out = LayerUsage {
            layers_size: sizes.values().sum(),
            ..Default::default()
        };
        for m in &images {
            let shared = m
                .layers
                .iter()
                .filter(|c| users.get(c.as_str()).copied().unwrap_or(0) > 1)
                .map(|c| sizes.get(c.as_str()).copied().unwrap_or(0))
                .sum();
            out.shared.insert(m.id.clone(), shared);
        }
        Ok(out)
    }
}
