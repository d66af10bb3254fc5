//! A route's plugin `config` table becomes JSON for the plugin's `init`, with file and
//! environment references resolved: `"@file:PATH"` (the file's text), `"@base64file:PATH"`
//! (its bytes in base64) and `"@env:NAME"`. Paths are relative to the config file's folder.

use base64::Engine as _;
use serde_json::Value;

use crate::config::Diagnostics;

/// The table as JSON with references resolved (the files become inputs of the config, which
/// reloads watch); `Err` names the first reference that failed.
pub fn resolve_config(table: &toml::Table, inputs: &mut Diagnostics) -> Result<String, String> {
    let mut value = serde_json::to_value(table)
        .map_err(|err| format!("config cannot be turned into JSON: {err}"))?;
    resolve(&mut value, inputs)?;
    Ok(value.to_string())
}

fn resolve(value: &mut Value, inputs: &mut Diagnostics) -> Result<(), String> {
    match value {
        Value::String(text) => {
            if let Some(path) = text.strip_prefix("@file:") {
                let path = inputs.input(path);
                *text = std::fs::read_to_string(&path)
                    .map_err(|err| format!("@file:{}: {err}", path.display()))?;
            } else if let Some(path) = text.strip_prefix("@base64file:") {
                let path = inputs.input(path);
                let bytes = std::fs::read(&path)
                    .map_err(|err| format!("@base64file:{}: {err}", path.display()))?;
                *text = base64::engine::general_purpose::STANDARD.encode(bytes);
            } else if let Some(name) = text.strip_prefix("@env:") {
                *text = std::env::var(name)
                    .map_err(|_| format!("@env:{name}: the environment variable is not set"))?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|item| resolve(item, inputs)),
        Value::Object(map) => map.values_mut().try_for_each(|item| resolve(item, inputs)),
        _ => Ok(()),
    }
}
