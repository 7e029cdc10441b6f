//! Results of a run: printed as a table, written as JSON.

use serde_json::{Map, Value, json};

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The run's label.
    pub label: String,
    /// Measurements, in the order they print.
    pub rows: Vec<(String, Value, &'static str)>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &'static str, label: &str) -> Self {
        Report {
            scenario,
            label: label.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Adds a measurement with its unit.
    pub fn add(&mut self, name: &str, value: impl Into<Value>, unit: &'static str) {
        self.rows.push((name.to_owned(), value.into(), unit));
    }

    /// A measurement by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v)
    }

    /// The table, for people.
    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("{} {}\n", self.scenario, self.label);
        for (name, value, unit) in &self.rows {
            let v = match value {
                Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            out.push_str(&format!("  {name:<width$}  {v:>14} {unit}\n"));
        }
        out
    }

    /// The JSON object, for tools.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        for (name, value, _) in &self.rows {
            m.insert(name.clone(), value.clone());
        }
        json!({"scenario": self.scenario, "label": self.label, "results": m})
    }
}
