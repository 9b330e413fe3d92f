"""Writes the DSPy program files in this folder, with DSPy's own ``save()``; the asynclm tests
load them (tests/test_modules_predict.py). Not run by the tests: DSPy is not a test dependency.

    python -m venv /tmp/dspy && /tmp/dspy/bin/pip install dspy==3.0.4   # or 2.6.27
    /tmp/dspy/bin/python tests/data/make_dspy_files.py tests/data
"""
import os
import sys

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import dspy

out = sys.argv[1]

class GenerateAnswer(dspy.Signature):
    """Answer questions with short factoid answers."""
    context = dspy.InputField(desc="may contain relevant facts")
    question = dspy.InputField()
    answer = dspy.OutputField(desc="often between 1 and 5 words")

class RAG(dspy.Module):
    def __init__(self):
        super().__init__()
        self.rewrite = dspy.Predict("question -> search_query")
        self.generate_answer = dspy.ChainOfThought(GenerateAnswer)
    def forward(self, question):
        q = self.rewrite(question=question).search_query
        return self.generate_answer(context=q, question=question)

rag = RAG()
rag.rewrite.signature = rag.rewrite.signature.with_instructions("Rewrite the question as a web search query.")
rag.rewrite.demos = [dspy.Example(question="Who wrote Hamlet?", search_query="Hamlet author")]
rag.generate_answer.predict.demos = [
    dspy.Example(augmented=True, context="Paris is the capital of France.", question="Capital of France?",
                 reasoning="The context says so.", answer="Paris"),
    dspy.Example(context="", question="2+2?", answer="4"),
]
rag.save(os.path.join(out, f"dspy-{dspy.__version__}-rag.json"))

qa = dspy.Predict("question -> answer")
qa.demos = [dspy.Example(question="1+1?", answer="2")]
qa.save(os.path.join(out, f"dspy-{dspy.__version__}-predict.json"))
print("written")
