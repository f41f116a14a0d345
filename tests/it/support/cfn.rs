//! deploy/cloudformation.yml as data: decoded by cfn-lint's own YAML reader (the short forms
//! `!Ref`, `!GetAtt`, `!Sub`, `!If` become `{"Ref": …}`, `{"Fn::GetAtt": …}`, …), and a small
//! evaluator of the intrinsic functions the template uses, for one set of parameters and the
//! physical ids/attributes the test gives its resources. Tests read the template as written
//! instead of repeating its values.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value};

/// The template, decoded.
pub fn load() -> Value {
    load_file(Path::new("deploy/cloudformation.yml"))
}

/// A template file (relative to the repository), decoded.
pub fn load_file(path: &Path) -> Value {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup-emulator.sh (cfn-lint decodes the template)",
        python.display()
    );
    let script = "import json, sys\n\
                  from cfnlint.decode import decode\n\
                  template, problems = decode(sys.argv[1])\n\
                  if problems:\n    sys.exit('\\n'.join(str(p) for p in problems))\n\
                  print(json.dumps(template))\n";
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .current_dir(repo)
        .output()
        .expect("running cfn-lint's decoder");
    assert!(
        out.status.success(),
        "decoding {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the decoded template is JSON")
}

/// The required parameters of deploy/cloudformation.yml, for one app `web` (project
/// `projects`) in account 123456789012, eu-west-1.
pub fn example_parameters(projects: &str) -> Vec<(&'static str, Value)> {
    let arn = |s: &str| Value::from(s.to_owned());
    vec![
        ("VpcId", arn("vpc-1")),
        ("SubnetIds", arn("subnet-1,subnet-2")),
        ("PublicSubnetIds", arn("subnet-3,subnet-4")),
        (
            "CertificateArn",
            arn("arn:aws:acm:eu-west-1:123456789012:certificate/abc"),
        ),
        ("SlipwayImage", arn("slipway:1")),
        (
            "WebhookSecretArn",
            arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:hook"),
        ),
        ("AppRoleArns", arn("arn:aws:iam::123456789012:role/web")),
        ("CodeBuildProjectNames", Value::from(projects.to_owned())),
        (
            "CodeBuildProjectArns",
            arn("arn:aws:codebuild:eu-west-1:123456789012:project/web-build"),
        ),
        (
            "EcsServiceArns",
            arn("arn:aws:ecs:eu-west-1:123456789012:service/main/web"),
        ),
        (
            "EcsClusterArns",
            arn("arn:aws:ecs:eu-west-1:123456789012:cluster/main"),
        ),
        (
            "TaskDefinitionArns",
            arn("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:*"),
        ),
        (
            "EcrRepositoryArns",
            arn("arn:aws:ecr:eu-west-1:123456789012:repository/web"),
        ),
    ]
}

/// A stack of the template: parameter values (defaults filled in), pseudo parameters, and
/// what `Ref` and `Fn::GetAtt` give for its resources.
pub struct Stack {
    pub template: Value,
    refs: HashMap<String, Value>,
    attributes: HashMap<(String, String), Value>,
}

impl Stack {
    /// `parameters` override the template's defaults; every parameter without a default must
    /// be given. Pseudo parameters: account 123456789012, eu-west-1, partition aws.
    pub fn new(template: Value, parameters: &[(&str, Value)]) -> Stack {
        let mut refs = HashMap::new();
        for (name, value) in [
            ("AWS::AccountId", "123456789012"),
            ("AWS::Region", "eu-west-1"),
            ("AWS::Partition", "aws"),
            ("AWS::StackName", "slipway"),
        ] {
            refs.insert(name.to_owned(), Value::from(value));
        }
        let declared = template["Parameters"]
            .as_object()
            .expect("Parameters")
            .clone();
        for (name, declaration) in &declared {
            // The last value given wins (callers append overrides).
            let given = parameters
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v);
            let value = given
                .cloned()
                .or_else(|| declaration.get("Default").cloned())
                .unwrap_or_else(|| panic!("parameter {name} has no default: give it"));
            let value = match (declaration["Type"].as_str(), value) {
                (Some(t), Value::String(s))
                    if t.starts_with("List<") || t == "CommaDelimitedList" =>
                {
                    Value::from(s.split(',').map(str::to_owned).collect::<Vec<_>>())
                }
                (_, v) => v,
            };
            refs.insert(name.clone(), value);
        }
        for (name, _) in parameters {
            assert!(declared.contains_key(*name), "no parameter {name}");
        }
        Stack {
            template,
            refs,
            attributes: HashMap::new(),
        }
    }

    /// What `Ref` to `resource` gives.
    pub fn set_ref(&mut self, resource: &str, value: impl Into<Value>) {
        self.refs.insert(resource.to_owned(), value.into());
    }

    /// What `Fn::GetAtt [resource, attribute]` gives.
    pub fn set_attribute(&mut self, resource: &str, attribute: &str, value: impl Into<Value>) {
        self.attributes
            .insert((resource.to_owned(), attribute.to_owned()), value.into());
    }

    pub fn resource(&self, name: &str) -> &Value {
        let r = &self.template["Resources"][name];
        assert!(r.is_object(), "no resource {name}");
        r
    }

    /// A resource's properties, evaluated. The resource must be made with these parameters
    /// (its `Condition` holds).
    pub fn properties(&self, name: &str) -> Value {
        assert!(
            self.is_made(name),
            "{name} is not made with these parameters (its Condition is false)"
        );
        self.eval(&self.resource(name)["Properties"])
    }

    /// Whether CloudFormation makes the resource with these parameters: it has no
    /// `Condition`, or its condition holds.
    pub fn is_made(&self, name: &str) -> bool {
        match self.resource(name).get("Condition") {
            None => true,
            Some(c) => self.condition(c.as_str().expect("a condition name")),
        }
    }

    /// The logical ids of the resources made with these parameters.
    pub fn made_resources(&self) -> Vec<String> {
        self.template["Resources"]
            .as_object()
            .expect("Resources")
            .keys()
            .filter(|name| self.is_made(name))
            .cloned()
            .collect()
    }

    /// An output's value, evaluated. The output must exist with these parameters.
    pub fn output(&self, name: &str) -> Value {
        assert!(
            self.has_output(name),
            "no output {name} with these parameters"
        );
        self.eval(&self.template["Outputs"][name]["Value"])
    }

    /// Whether the stack has the output with these parameters (it exists, and its
    /// `Condition`, if any, holds).
    pub fn has_output(&self, name: &str) -> bool {
        let o = &self.template["Outputs"][name];
        if o["Value"].is_null() {
            return false;
        }
        match o.get("Condition") {
            None => true,
            Some(c) => self.condition(c.as_str().expect("a condition name")),
        }
    }

    /// The rules (`Rules`) whose condition holds and one of whose assertions does not: what
    /// CloudFormation would refuse the parameters for.
    pub fn violated_rules(&self) -> Vec<String> {
        let Some(rules) = self.template["Rules"].as_object() else {
            return Vec::new();
        };
        rules
            .iter()
            .filter(|(_, rule)| rule.get("RuleCondition").is_none_or(|c| self.truth(c)))
            .filter(|(_, rule)| {
                rule["Assertions"]
                    .as_array()
                    .expect("Assertions")
                    .iter()
                    .any(|a| !self.truth(&a["Assert"]))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn condition(&self, name: &str) -> bool {
        let c = &self.template["Conditions"][name];
        assert!(!c.is_null(), "no condition {name}");
        self.truth(c)
    }

    fn truth(&self, c: &Value) -> bool {
        let (f, args) = single(c).unwrap_or_else(|| panic!("not a condition: {c}"));
        match f {
            "Condition" => self.condition(args.as_str().expect("a condition name")),
            "Fn::Equals" => self.eval(&args[0]) == self.eval(&args[1]),
            "Fn::Not" => !self.truth(&args[0]),
            "Fn::And" => args.as_array().unwrap().iter().all(|a| self.truth(a)),
            "Fn::Or" => args.as_array().unwrap().iter().any(|a| self.truth(a)),
            other => panic!("condition function {other} is not evaluated here"),
        }
    }

    /// Evaluates the intrinsic functions in `v`. `AWS::NoValue` drops the item it is in.
    pub fn eval(&self, v: &Value) -> Value {
        self.eval_opt(v).unwrap_or(Value::Null)
    }

    fn eval_opt(&self, v: &Value) -> Option<Value> {
        if let Some((f, args)) = single(v) {
            if let Some(value) = self.function(f, args) {
                return value;
            }
        }
        Some(match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter_map(|(k, v)| self.eval_opt(v).map(|v| (k.clone(), v)))
                    .collect::<Map<_, _>>(),
            ),
            Value::Array(items) => {
                Value::Array(items.iter().filter_map(|v| self.eval_opt(v)).collect())
            }
            other => other.clone(),
        })
    }

    /// Some(result) when `f` is an intrinsic function (result None: AWS::NoValue).
    fn function(&self, f: &str, args: &Value) -> Option<Option<Value>> {
        Some(match f {
            "Ref" => {
                let name = args.as_str().expect("Ref names a string");
                if name == "AWS::NoValue" {
                    return Some(None);
                }
                Some(
                    self.refs
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| panic!("Ref {name}: not set in the test")),
                )
            }
            "Fn::GetAtt" => {
                let (resource, attribute) = match args {
                    Value::Array(a) => (a[0].as_str().unwrap(), a[1].as_str().unwrap()),
                    Value::String(s) => s.split_once('.').expect("Resource.Attribute"),
                    other => panic!("Fn::GetAtt {other}"),
                };
                Some(self.attribute(resource, attribute))
            }
            "Fn::If" => {
                let branch = if self.condition(args[0].as_str().expect("a condition")) {
                    &args[1]
                } else {
                    &args[2]
                };
                self.eval_opt(branch)
            }
            "Fn::Sub" => {
                let (text, vars) = match args {
                    Value::String(s) => (s.as_str(), Map::new()),
                    Value::Array(a) => (
                        a[0].as_str().expect("Fn::Sub text"),
                        a[1].as_object().cloned().unwrap_or_default(),
                    ),
                    other => panic!("Fn::Sub {other}"),
                };
                Some(Value::from(self.substitute(text, &vars)))
            }
            "Fn::Join" => {
                let separator = args[0].as_str().expect("Fn::Join separator");
                let items = self.eval(&args[1]);
                let parts: Vec<String> = items
                    .as_array()
                    .expect("Fn::Join list")
                    .iter()
                    .map(text_of)
                    .collect();
                Some(Value::from(parts.join(separator)))
            }
            "Fn::Select" => {
                let index = text_of(&self.eval(&args[0])).parse::<usize>().unwrap();
                Some(self.eval(&args[1])[index].clone())
            }
            _ => return None,
        })
    }

    fn attribute(&self, resource: &str, attribute: &str) -> Value {
        self.attributes
            .get(&(resource.to_owned(), attribute.to_owned()))
            .cloned()
            .unwrap_or_else(|| panic!("GetAtt {resource}.{attribute}: not set in the test"))
    }

    fn substitute(&self, text: &str, vars: &Map<String, Value>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').expect("an unclosed ${ in Fn::Sub");
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                out.push_str(&text_of(&self.eval(v)));
            } else if let Some((resource, attribute)) = name.split_once('.') {
                out.push_str(&text_of(&self.attribute(resource, attribute)));
            } else {
                let v = self.function("Ref", &Value::from(name)).unwrap();
                out.push_str(&text_of(&v.unwrap_or(Value::Null)));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// `{"Fn::X": args}` (one key) as ("Fn::X", args).
fn single(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    (k == "Ref" || k == "Condition" || k.starts_with("Fn::")).then_some((k.as_str(), v))
}

/// A scalar as CloudFormation puts it into a string.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
