//! `GET /system/df`: disk usage of images, containers, volumes and build cache, shaped as
//! dockerd 20.10 answers it (`docker system df`).

use super::http::Response;
use super::Daemon;
use crate::container::prune::dir_size;
use crate::container::rootfs::Rootfs;
use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::collections::HashMap;

/// `GET /system/df`.
pub async fn df(d: &Daemon) -> ApiResult<Response> {
    let none = HashMap::new();
    let mut containers = d.containers.list(true, None, &none)?;
    let images = d.images.clone();
    let (mut list, usage) = tokio::task::spawn_blocking(move || {
        Ok::<_, ApiError>((images.list(false, &none)?, images.layer_usage()?))
    })
    .await
    .map_err(|e| ApiError::internal("system df task", e))??;
    let sizes: HashMap<String, u64> = list.iter().map(|i| (i.id.clone(), i.size)).collect();
    let data_root = d.containers.paths.data_root.clone();
    let ids: Vec<String> = containers
        .iter()
        .map(|c| c["Id"].as_str().unwrap_or("").to_string())
        .collect();
    let rw: Vec<u64> = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| dir_size(&Rootfs::new(&data_root, id).upper()))
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal("system df task", e))?;
    let mut uses: HashMap<String, i64> = HashMap::new();
    for (c, size) in containers.iter_mut().zip(rw) {
        let image = c["ImageID"].as_str().unwrap_or("").to_string();
        let base = sizes.get(&image).copied().unwrap_or(0);
        *uses.entry(image).or_default() += 1;
        if let Value::Object(m) = c {
            m.insert("SizeRw".into(), json!(size));
            m.insert("SizeRootFs".into(), json!(size + base));
        }
    }
    for i in &mut list {
        i.containers = uses.get(&i.id).copied().unwrap_or(0);
        i.shared_size = usage.shared.get(&i.id).copied().unwrap_or(0) as i64;
    }
    Ok(Response::json(
        200,
        &json!({
            "LayersSize": usage.layers_size,
            "Images": list,
            "Containers": containers,
            "Volumes": [],
            "BuildCache": [],
        }),
    ))
}
