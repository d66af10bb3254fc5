//! Range checks that run while the file is deserialized, so that a bad number is reported
//! with its position and key path like any other type error.

use serde::de::{Deserialize, Deserializer, Error};

use super::Size;

pub fn at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(d)?;
    if value == 0 {
        Err(D::Error::custom("must be at least 1"))
    } else {
        Ok(value)
    }
}

pub fn at_least_one_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(d)?;
    if value == 0 {
        Err(D::Error::custom("must be at least 1"))
    } else {
        Ok(value)
    }
}

pub fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    at_least_one_usize(d).map(Some)
}

pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(d)?;
    if value > 100 {
        Err(D::Error::custom("a percentage is at most 100"))
    } else {
        Ok(value)
    }
}

pub fn retry_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(d)?;
    if value > 10 {
        Err(D::Error::custom("at most 10 retries"))
    } else {
        Ok(value)
    }
}

pub fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(D::Error::custom("must be between 0.0 and 1.0"))
    }
}

pub fn header_size<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    let value = Size::deserialize(d)?;
    if value.bytes() < 1024 {
        Err(D::Error::custom("must be at least 1KiB"))
    } else {
        Ok(value)
    }
}
